"""The campaign summarizer: exactly once per finished campaign, LLM-written or rule-based, with a CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from sqlalchemy import update

from db import repo
from db.models import CallOutcome, CampaignStatus, Speaker, Task, TaskStatus
from opendeep.analyzer import PostCallAnalyzer
from opendeep.events import EventHub
from opendeep.summarizer import CampaignSummarizer, summary_csv
from tests.doubles.aftercall_seed import answered_call, end_call, seed_task, start_call, verdict

LLM_SUMMARY = {"summary": "One practice booked you for Tuesday 10:00; one never answered; one asked not to be "
                          "called.", "key_findings": ["Dr. Smith: Tuesday 10:00, $120"],
               "next_steps": ["Confirm Tuesday with Dr. Smith"]}


async def finished_campaign(sessions, settings, fake_openai):
    """Three targets, three endings: booked (analyzed), never answered (rule), do-not-call (analyzed)."""
    booked = await seed_task(sessions, phone="+15551230001")
    booked_call = await answered_call(sessions, settings, booked, [(Speaker.CALLEE, "Tuesday at ten it is.")])
    silent = await seed_task(sessions, phone="+15551230002", campaign_id=booked.campaign_id,
                             user_id=booked.user_id, target="Lakeside Dental", max_attempts=1)
    silent_call = await start_call(sessions, silent, answered=False)
    await end_call(sessions, settings, silent, silent_call, CallOutcome.NO_ANSWER)
    refused = await seed_task(sessions, phone="+15551230003", campaign_id=booked.campaign_id,
                              user_id=booked.user_id, target="=HYPERLINK(\"http://evil\")")
    refused_call = await answered_call(sessions, settings, refused, [(Speaker.CALLEE, "Never call me again.")])
    fake_openai.queue_reply(content=verdict("success", summary="Booked Tuesday 10:00.",
                                     extracted={"booked_time": "Tuesday 10:00", "price": "$120"}))
    fake_openai.queue_reply(content=verdict("do_not_call", add_to_dnd=True, summary="Asked not to be called."))
    analyzer = PostCallAnalyzer(settings, sessions)
    try:
        assert await analyzer.run_once() == 2
    finally:
        await analyzer.close()
    fake_openai.requests.clear()
    return booked, {"booked": booked_call, "silent": silent_call, "refused": refused_call}


async def test_a_finished_campaign_is_summarized_exactly_once_by_racing_summarizers(sessions, llm_settings,
                                                                                    fake_openai):
    booked, calls = await finished_campaign(sessions, llm_settings, fake_openai)
    fake_openai.responder = lambda body: {"content": json.dumps(LLM_SUMMARY), "delay": 0.2}
    hub = EventHub()
    first = CampaignSummarizer(llm_settings, sessions, hub)
    second = CampaignSummarizer(llm_settings, sessions, hub)
    try:
        async with hub.subscribe(booked.user_id) as queue:
            results = await asyncio.gather(first.run_once(), second.run_once(), first.run_once())
            assert sum(results) == 1
            assert await second.run_once() == 0
            kinds = []
            while not queue.empty():
                kinds.append(queue.get_nowait().kind)
    finally:
        await first.close()
        await second.close()
    assert kinds == ["campaign.summarized", "notification"]

    async with sessions() as session:
        campaign = await repo.get_campaign(session, booked.user_id, booked.campaign_id)
        notes = await repo.list_notifications(session, booked.user_id)
    assert campaign.status is CampaignStatus.COMPLETED and campaign.finished_at and campaign.summarized_at
    assert campaign.summary["generated_by"] == "llm"
    # The report against the goal comes first (rule-based), then the model's paragraph.
    assert campaign.summary_text.startswith("Each target: 1 of 3 target(s) met the objective.\n\n"
                                            + LLM_SUMMARY["summary"])
    assert "- Confirm Tuesday with Dr. Smith" in campaign.summary_text
    assert [n.kind for n in notes] == ["campaign.summarized"]
    rows = {row["target"]: row for row in campaign.summary["targets"]}
    assert rows['=HYPERLINK("http://evil")']["status"] == "cancelled_dnd"
    assert rows["Dr. Smith Dental"]["outcome"] == "success"
    assert rows["Dr. Smith Dental"]["result"] == {"booked_time": "Tuesday 10:00", "price": "$120"}
    assert rows["Dr. Smith Dental"]["transcript_url"] == f"/calls/{calls['booked']}"
    assert rows["Lakeside Dental"]["status"] == "failed" and rows["Lakeside Dental"]["attempts"] == 1
    assert rows["Lakeside Dental"]["transcript_url"] == f"/calls/{calls['silent']}"
    assert campaign.summary["counts"] == {"success": 1, "failed": 1, "do_not_call": 1}

    body = fake_openai.requests[0]
    assert body["response_format"]["json_schema"]["name"] == "campaign_summary"
    assert "Tuesday 10:00" in body["messages"][-1]["content"]

    exported = list(csv.reader(io.StringIO(summary_csv(campaign))))
    assert exported[0] == ["target", "phone_number", "outcome_words", "summary", "result", "calls_placed",
                           "attempts", "status", "outcome", "transcript_url"]
    by_target = {line[0]: line for line in exported[1:]}
    assert by_target["Dr. Smith Dental"][1] == "+15551230001"  # a plain number is no formula: written as it is
    assert by_target["Dr. Smith Dental"][2] == "objective met"
    assert json.loads(by_target["Dr. Smith Dental"][4]) == {"booked_time": "Tuesday 10:00", "price": "$120"}
    assert by_target["Dr. Smith Dental"][9] == f"/calls/{calls['booked']}"
    assert "'=HYPERLINK(\"http://evil\")" in by_target  # CSV injection is neutralised


async def test_a_campaign_with_an_open_task_is_not_summarized(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    summarizer = CampaignSummarizer(llm_settings, sessions)
    assert await summarizer.run_once() == 0
    assert fake_openai.requests == []
    async with sessions() as session:
        campaign = await repo.get_campaign(session, seeded.user_id, seeded.campaign_id)
    assert campaign.summarized_at is None
    with pytest.raises(ValueError, match="no summary yet"):
        summary_csv(campaign)


async def test_a_failing_llm_gives_way_to_a_rule_based_summary(sessions, llm_settings, fake_openai):
    booked, _ = await finished_campaign(sessions, llm_settings, fake_openai)
    async with sessions() as session, session.begin():  # the user had cancelled the campaign meanwhile
        await repo.set_campaign_status(session, booked.user_id, booked.campaign_id, CampaignStatus.CANCELLED)
    fake_openai.queue_reply(content="not json")
    fake_openai.queue_reply(status=500)
    summarizer = CampaignSummarizer(llm_settings, sessions, max_llm_failures=3, retry_seconds=0)
    try:
        assert await summarizer.run_once() == 0   # invalid JSON: try again later
        assert await summarizer.run_once() == 0   # HTTP 500: try again later
        assert await summarizer.run_once() == 1   # third failure (nothing queued -> 500): rules
    finally:
        await summarizer.close()
    assert len(fake_openai.requests) == 3
    async with sessions() as session:
        campaign = await repo.get_campaign(session, booked.user_id, booked.campaign_id)
    assert campaign.summary["generated_by"] == "rules"
    assert campaign.status is CampaignStatus.CANCELLED  # a cancelled campaign is summarized, not "completed"
    assert "3 of 3 target(s) called (3 call(s) placed)" in campaign.summary_text
    assert "1 objective met" in campaign.summary_text
    assert "Dr. Smith Dental result: booked_time=Tuesday 10:00, price=$120" in campaign.summary_text


async def test_the_summary_waits_for_the_last_task(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    fake_openai.responder = lambda body: {"content": json.dumps(LLM_SUMMARY)}
    summarizer = CampaignSummarizer(llm_settings, sessions)
    try:
        assert await summarizer.run_once() == 0
        async with sessions() as session, session.begin():
            await session.execute(update(Task).where(Task.id == seeded.task_id).values(
                status=TaskStatus.CANCELLED, status_reason="cancelled by the user"))
        assert await summarizer.run_once() == 1
    finally:
        await summarizer.close()
    async with sessions() as session:
        campaign = await repo.get_campaign(session, seeded.user_id, seeded.campaign_id)
    (row,) = campaign.summary["targets"]
    assert row["outcome"] == "cancelled" and row["summary"] == "cancelled by the user"
    assert row["transcript_url"] is None
