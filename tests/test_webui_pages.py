"""The pages a user clicks through: campaign detail with calls, pause/resume/cancel buttons, CSV imports, the DND
list, the summary page and its CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest_asyncio

from db import repo
from db.models import Call, CallOutcome, CallStatus, Speaker, TaskStatus
from db.types import utcnow
from tests.doubles.task_state import put_task
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()


async def test_campaign_page_shows_status_attempts_next_action_and_each_calls_outcome(alice):
    runtime, client, user_id = alice
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    task_id = confirmation.task_ids[0]
    retry_at = utcnow() + timedelta(hours=1)
    async with runtime.sessions() as session:
        await put_task(session, user_id, task_id, TaskStatus.RETRY_SCHEDULED,
                                   reason="busy on attempt 1 of 2", next_action_time=retry_at)
        task = await repo.get_task(session, user_id, task_id)
        task.attempt_count = 1
        call = Call(user_id=user_id, task_id=task_id, attempt_number=1, status=CallStatus.ENDED,
                    outcome=CallOutcome.BUSY, dialed_number="+14155550101", duration_seconds=0,
                    dial_status="BUSY", hangup_cause=17, ended_at=utcnow())
        session.add(call)
        await session.flush()
        await repo.record_call_event(session, user_id, call.id, "call.ended", {"outcome": "busy"})
        await session.commit()
    page = (await client.http.get(f"/campaigns/{confirmation.campaign.id}")).text
    assert "retry_scheduled" in page and "busy on attempt 1 of 2" in page and "1 / 2" in page
    # The next action says when, in the user's zone (UTC here), or what it waits for (the callee's window, which
    # depends on the hour this runs: webui.status.waiting_for is tested with a fixed clock in test_webui_status).
    assert f"retry at {retry_at:%Y-%m-%d %H:%M} UTC (" in page or "calling window 09:00-17:30 opens at 09:00 " \
        "callee&#39;s time" in page
    assert "attempt 2 of 2" in page
    assert "Call 1:" in page and "busy" in page and "call.ended" in page
    fragment = await client.http.get(f"/campaigns/{confirmation.campaign.id}/tasks")
    assert fragment.status_code == 200 and "<html" not in fragment.text and "Bright Smile" in fragment.text

    paused = await client.form(f"/tasks/{task_id}/pause")
    assert paused.headers["location"] == f"/campaigns/{confirmation.campaign.id}#task-{task_id}"
    page = (await client.http.get(f"/campaigns/{confirmation.campaign.id}")).text
    assert "Task" in page and "paused — resume to schedule it again" in page
    refused = await client.form(f"/tasks/{task_id}/pause")
    assert refused.status_code == 303
    assert "is on_hold" in (await client.http.get(f"/campaigns/{confirmation.campaign.id}")).text
    api = await client.api("POST", f"/api/tasks/{task_id}/pause")
    assert api.status_code == 409 and api.json()["error"]["code"] == "not_pausable"
    assert (await client.api("POST", f"/api/tasks/{task_id}/explode")).status_code == 404
    resumed = await client.api("POST", f"/api/tasks/{task_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["changed_task_ids"] == [task_id]
    cancelled = await client.api("POST", f"/api/campaigns/{confirmation.campaign.id}/cancel")
    assert cancelled.json()["message"].startswith(f"campaign {confirmation.campaign.id} cancelled (2 task(s)")


async def test_call_page_reads_like_a_report_times_in_utc_and_the_analysis_as_facts(alice):
    runtime, client, user_id = alice
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    started = datetime(2026, 11, 23, 15, 11, 19, 841857, tzinfo=UTC)
    async with runtime.sessions() as session:
        call = Call(user_id=user_id, task_id=confirmation.task_ids[0], attempt_number=1, status=CallStatus.ENDED,
                    outcome=CallOutcome.ANSWERED, dialed_number="+14155550101", duration_seconds=6,
                    dial_status="ANSWER", hangup_cause=16, started_at=started,
                    answered_at=started + timedelta(seconds=2), ended_at=started + timedelta(seconds=8),
                    analysis={"outcome": "retry", "reason": "The receptionist asked us to call back.",
                              "summary": "No slot today.", "extracted": [{"name": "best time", "value": "after 10"}],
                              "should_retry": True, "retry_at": "2026-11-24T10:00:00+00:00",
                              "callback_requested": True, "add_to_dnd": False,
                              "notes_for_next_call": "Ask for Maria.", "model": "gpt-4.1-mini"})
        session.add(call)
        await session.flush()
        await repo.add_transcript(session, user_id, call.id, Speaker.CALLEE, "Call back after 10, ask for Maria.", 900)
        await session.commit()
    page = (await client.http.get(f"/calls/{call.id}")).text
    for shown in ("2026-11-23 15:11:19 UTC", "2026-11-23 15:11:21 UTC", "2026-11-23 15:11:27 UTC",
                  "The receptionist asked us to call back.", "<dt>best time</dt><dd>after 10</dd>",
                  "2026-11-24 10:00 UTC", "the callee asked to be called back", "Ask for Maria.",
                  "Everything the analyzer returned", "Call back after 10, ask for Maria."):
        assert shown in page, shown
    assert "15:11:19.841857" not in page and "the callee asked not to be called again" not in page


async def test_campaign_page_offers_only_the_actions_its_state_allows(alice):
    runtime, client, user_id = alice
    campaign_id = (await confirm_plan(runtime.sessions, user_id, a_plan(), "k")).campaign.id

    def buttons(page: str) -> list[str]:
        return [label for label in ("Pause campaign", "Resume campaign", "Cancel campaign") if label in page]

    assert buttons((await client.http.get(f"/campaigns/{campaign_id}")).text) == ["Pause campaign",
                                                                                   "Cancel campaign"]
    await client.form(f"/campaigns/{campaign_id}/pause")
    assert buttons((await client.http.get(f"/campaigns/{campaign_id}")).text) == ["Resume campaign",
                                                                                   "Cancel campaign"]
    await client.form(f"/campaigns/{campaign_id}/cancel")
    assert buttons((await client.http.get(f"/campaigns/{campaign_id}")).text) == []


async def test_targets_csv_import_creates_a_campaign_or_nothing(alice):
    runtime, client, user_id = alice
    bad = await client.form("/campaigns/import", {"name": "Dentists", "goal": "Book a cleaning"},
                            files={"file": ("t.csv", b"name,phone_number\nA,+14155550101\nB,nope\n", "text/csv")})
    assert bad.status_code == 400 and "line 3:" in bad.text and "Nothing was imported" in bad.text
    async with runtime.sessions() as session:
        assert await repo.list_campaigns(session, user_id) == []
    good = await client.form("/campaigns/import", {"name": "Dentists", "goal": "Book a cleaning"},
                             files={"file": ("t.csv", b"name,phone_number\nA,+14155550101\nB,+14155550102\n",
                                             "text/csv")})
    assert good.status_code == 303
    async with runtime.sessions() as session:
        (campaign,) = await repo.list_campaigns(session, user_id)
        tasks = await repo.list_tasks(session, user_id, campaign.id)
    assert good.headers["location"] == f"/campaigns/{campaign.id}"
    assert [(t.target_name, t.objective) for t in tasks] == [("A", "Book a cleaning"), ("B", "Book a cleaning")]
    more = await client.http.post(f"/api/campaigns/{campaign.id}/targets", content=b"name,phone_number\nC,12\n",
                                  headers={"x-csrf-token": client.csrf, "content-type": "text/csv"})
    assert more.status_code == 422 and more.json()["error"]["details"] == [
        {"line": 2, "reason": "'12' has no valid country code: write it in E.164, e.g. +14155550123 (or set your "
                              "country on the Account page, or DEFAULT_REGION, to write national numbers)"}]


async def test_dnd_page_add_remove_import_and_export(alice):
    runtime, client, user_id = alice
    await client.form("/dnd", {"phone_number": "+1 415 555 0101", "reason": "asked us"})
    assert "+14155550101" in (await client.http.get("/dnd")).text
    bad = await client.form("/dnd", {"phone_number": "12345"})
    assert bad.status_code == 303 and "12345&#39; has no valid country code" in (await client.http.get("/dnd")).text
    await client.form("/dnd/import", files={"file": ("dnd.csv", b"phone_number,reason\n+14155550102,x\nbad\n",
                                                     "text/csv")})
    assert "line 3" in (await client.http.get("/dnd")).text
    await client.form("/dnd/import", files={"file": ("dnd.csv", b"+14155550102,moved\n+14155550101,again\n",
                                                     "text/csv")})
    assert "Imported 2 number(s), 1 new." in (await client.http.get("/dnd")).text
    exported = await client.http.get("/dnd.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    assert [line.split(",")[0] for line in exported.text.splitlines()] == [
        "phone_number", "+14155550101", "+14155550102"]
    await client.form("/dnd/remove", {"phone_number": "+14155550101"})
    async with runtime.sessions() as session:
        assert [e.phone_number for e in await repo.list_dnd(session, user_id)] == ["+14155550102"]
    assert (await client.api("DELETE", "/api/dnd/+14155550102")).json()["removed"] is True


async def test_summary_page_and_csv_come_from_the_campaign_summary(alice):
    runtime, client, user_id = alice
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    campaign_id = confirmation.campaign.id
    none_yet = await client.http.get(f"/campaigns/{campaign_id}/summary.csv")
    assert none_yet.status_code == 404
    assert (await client.http.get(f"/campaigns/{campaign_id}/summary")).status_code == 404
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        campaign.summary_text = "One cleaning booked.\n\nOak Dental was busy twice."
        campaign.summary = {"columns": ["target", "result"], "rows": [["Bright Smile", "booked Tue 9:00"],
                                                                      ["Oak Dental", "=not reached"]]}
        await session.commit()
    page = (await client.http.get(f"/campaigns/{campaign_id}/summary")).text
    assert "One cleaning booked." in page and "booked Tue 9:00" in page
    assert f'href="/campaigns/{campaign_id}/summary"' in (await client.http.get(f"/campaigns/{campaign_id}")).text
    csv_text = (await client.http.get(f"/campaigns/{campaign_id}/summary.csv")).text
    assert csv_text.splitlines() == ["target,result", "Bright Smile,booked Tue 9:00", "Oak Dental,'=not reached"]
