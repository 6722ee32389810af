"""The campaign summary reads for a person (issue 15 item 3): it counts calls placed and targets not called (a
cancelled campaign that never dialed is not "3 target(s) called"), its table has the target, the number, the
outcome in words, what was learned and a link to the call (not task ids and `{}`), its CSV stays formula-safe,
and before it exists the page explains why, with a way back."""

from __future__ import annotations

import csv
import io

import pytest_asyncio

from db import repo
from db.models import Speaker
from opendeep.summarizer import CampaignSummarizer, count_line, outcome_in_words
from tests.doubles.aftercall_seed import answered_call, seed_task
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)   # no LLM configured: the rule-based summary
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()


async def _summarize(runtime, user_id, campaign_id) -> None:
    summarizer = CampaignSummarizer(runtime.settings, runtime.sessions)
    try:
        assert await summarizer.summarize_campaign(user_id, campaign_id)
    finally:
        await summarizer.close()


async def test_a_campaign_cancelled_before_any_call_says_no_call_was_placed(alice):
    runtime, client, user_id = alice
    targets = [{"name": f"Shop {i}", "phone_number": f"+1415555010{i}", "objective": "Ask the price"}
               for i in range(1, 4)]
    campaign_id = (await confirm_plan(runtime.sessions, user_id, a_plan(targets=targets), "k")).campaign.id
    assert (await client.api("POST", f"/api/campaigns/{campaign_id}/cancel")).status_code == 200
    await _summarize(runtime, user_id, campaign_id)
    summary = (await client.api("GET", f"/api/campaigns/{campaign_id}/summary")).json()
    assert summary["summary"]["calls"] == "0 of 3 target(s) called (0 call(s) placed); 3 not called"
    assert "target(s) called — 3 cancelled" not in summary["summary_text"]
    assert "0 of 3 target(s) called (0 call(s) placed); 3 not called" in summary["summary_text"]
    page = (await client.http.get(f"/campaigns/{campaign_id}/summary")).text
    assert page.count("not called: cancelled by user") == 3 and page.count("no call placed") == 3


async def test_the_summary_table_is_for_a_person_and_its_csv_is_formula_safe(alice, sessions, settings):
    runtime, client, user_id = alice
    booked = await seed_task(sessions, user_id=user_id, phone="+15551230001")
    await answered_call(sessions, settings, booked, [(Speaker.CALLEE, "Tuesday at ten it is.")])
    async with sessions() as session, session.begin():
        task = await repo.get_task(session, user_id, booked.task_id)
        task.status, task.result = task.status.COMPLETED, {
            "outcome": "success", "summary": "Booked Tuesday 10:00.", "data": {"price": "=120"}}
        other = await repo.add_task(session, user_id, booked.campaign_id, target_name="@Oak Dental",
                                    phone_number="+15551230002")
        other.status, other.status_reason = other.status.CANCELLED, "cancelled by user"
    await _summarize(runtime, user_id, booked.campaign_id)
    page = (await client.http.get(f"/campaigns/{booked.campaign_id}/summary")).text
    for header in ("Target", "Number", "Outcome", "What we learned", "Call"):
        assert f"<th>{header}</th>" in page
    for dump in ("task_id", "transcript_url", "{}", "<th>result</th>"):
        assert dump not in page
    assert "objective met" in page and "Booked Tuesday 10:00. price: =120" in page
    assert 'href="/calls/' in page and "listen / read the call" in page
    assert "Each target: 1 of 2 target(s) met the objective." in page
    assert "1 of 2 target(s) called (1 call(s) placed): 1 objective met; 1 not called" in page
    rows = list(csv.reader(io.StringIO((await client.http.get(
        f"/campaigns/{booked.campaign_id}/summary.csv")).text)))
    assert rows[0] == ["target", "phone_number", "outcome", "learned", "calls_placed", "call_url"]
    assert rows[1][:3] == ["Dr. Smith Dental", "+15551230001", "objective met"]   # a number stays a number
    assert rows[2][0] == "'@Oak Dental"                                            # a formula does not run


async def test_no_summary_yet_is_a_page_that_says_why_with_a_way_back(alice):
    runtime, client, user_id = alice
    campaign_id = (await confirm_plan(runtime.sessions, user_id, a_plan(), "k")).campaign.id
    response = await client.http.get(f"/campaigns/{campaign_id}/summary")
    assert response.status_code == 404
    page = response.text
    assert "No summary yet" in page and "once every target of the campaign is finished" in page
    assert "2 target(s) are not finished yet" in page and f'href="/campaigns/{campaign_id}"' in page
    api = await client.api("GET", f"/api/campaigns/{campaign_id}/summary")
    assert api.status_code == 200 and api.json()["summarized_at"] is None


def test_outcomes_in_words_and_the_count_line():
    rows = [{"status": "completed", "verdict": "success", "calls_placed": 1, "reason": ""},
            {"status": "failed", "verdict": None, "calls_placed": 0, "reason": "originate refused"},
            {"status": "failed", "verdict": None, "calls_placed": 3, "reason": "no answer"},
            {"status": "failed", "verdict": "wrong_number", "calls_placed": 1, "reason": ""},
            {"status": "cancelled", "verdict": None, "calls_placed": 1, "reason": "the goal was met with B"},
            {"status": "cancelled_dnd", "verdict": None, "calls_placed": 0, "reason": ""}]
    assert [outcome_in_words(row) for row in rows] == [
        "objective met", "not called: originate refused", "not reached after 3 call(s)", "wrong number",
        "stopped calling: the goal was met with B", "not called: the number is on a do-not-call list"]
    assert count_line(rows) == ("4 of 6 target(s) called (6 call(s) placed): 1 objective met, "
                                "1 not reached after 3 call(s), 1 wrong number, 1 stopped calling; 2 not called")
