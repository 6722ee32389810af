"""Usage recorded where it happens, on both databases: the call AI's response.done usage through the real SDK
and the AudioSocket bridge into the call's records, the transcription's, the trunk's answered seconds at the
call's end, the analyzer's and the assistant's chat-completions usage; and a campaign's budget reached pauses it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import select

from ami_controller.outcomes import finish_call
from ami_controller.scheduler import claim_due_tasks
from audiosocket.usage import realtime_usage, transcription_usage
from db import costs, repo
from db.models import (
    Call,
    CallOutcome,
    CallStatus,
    Campaign,
    CampaignStatus,
    PauseReason,
    TaskStatus,
    UsageKind,
    UsageRecord,
)
from db.types import utcnow
from opendeep.analyzer import PostCallAnalyzer
from opendeep.costs import chat_token_usage
from opendeep.prices import TokenUsage, parse_model_prices, price_usage
from tests.doubles.aftercall_seed import answered_call, seed_task, verdict
from tests.doubles.ami_helpers import eventually
from tests.doubles.audiosocket_calls import asterisk_call, audiosocket_server, seed_call
from tests.doubles.fake_openai import generated_speech
from tests.doubles.fake_realtime import FakeResponse
from tests.doubles.task_state import put_task
from tests.doubles.webui_client import make_runtime
from webui.assistant import UIAssistantService
from webui.controls import ControlAction, ControlError, control_campaign


async def usage_rows(sessions, **where) -> list[UsageRecord]:
    async with sessions() as db:
        query = select(UsageRecord).order_by(UsageRecord.id)
        for key, value in where.items():
            query = query.where(getattr(UsageRecord, key) == value)
        return list((await db.scalars(query)).all())


async def campaign_row(sessions, campaign_id: int) -> Campaign:
    async with sessions() as db:
        return await db.get(Campaign, campaign_id)


def tokens_of(row: UsageRecord) -> TokenUsage:
    return TokenUsage(text_in=row.text_in, text_cached_in=row.text_cached_in, text_out=row.text_out,
                      audio_in=row.audio_in, audio_cached_in=row.audio_cached_in, audio_out=row.audio_out)


async def test_the_call_ais_response_done_usage_reaches_the_calls_records_through_the_real_sdk(
        scene, sessions, realtime):
    seeded = await seed_call(sessions)
    runtime = scene()
    realtime.greeting = FakeResponse(audio=generated_speech(1.0), transcript="Hello, this is an AI assistant.",
                                     callee_reply="Yes, hello?")
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        await eventually(lambda: len(model.usage_sent) >= 2 or None, 5, 0.05, what="the greeting's usage")
        await model.speak(FakeResponse(audio=generated_speech(0.5), transcript="Is Tuesday fine?"))
        records = await eventually(lambda: _rows_if(sessions, 3, call_id=seeded.call_id), 5, 0.05,
                                   what="three usage records of the call")
        assert not asterisk.hangup.is_set()
    sent = model.usage_sent   # what the model's server reported: two Responses, one transcription
    responses = [usage for usage in sent if "input_token_details" in usage and "cached_tokens" in
                 usage["input_token_details"]]
    [transcribed] = [usage for usage in sent if usage.get("type") == "tokens"]
    assert len(responses) == 2 and responses[1]["input_token_details"]["cached_tokens"] > 0

    ai_rows = [row for row in records if row.kind is UsageKind.CALL_AI]
    [transcription_row] = [row for row in records if row.kind is UsageKind.TRANSCRIPTION]
    assert [tokens_of(row) for row in ai_rows] == [realtime_usage(usage) for usage in responses]
    assert sum(tokens_of(row).total_tokens for row in ai_rows) == sum(u["total_tokens"] for u in responses)
    assert tokens_of(transcription_row) == transcription_usage(transcribed)
    assert {row.model for row in ai_rows} == {"gpt-realtime"}
    assert transcription_row.model == "gpt-4o-mini-transcribe"
    for row in records:   # priced when recorded, with the prices used kept on the record
        assert (row.user_id, row.task_id) == (seeded.user_id, seeded.task_id)
        assert row.cost_microusd == price_usage(runtime.settings.model_prices, row.model, tokens_of(row)).cost_microusd
        assert row.cost_microusd > 0 and row.price["name"] == row.model
    campaign = await campaign_row(sessions, records[0].campaign_id)
    assert campaign.spent_microusd == sum(row.cost_microusd for row in records)
    async with sessions() as db:
        view = await costs.call_costs(db, seeded.user_id, seeded.call_id)
    assert view["total_microusd"] == campaign.spent_microusd
    assert {line["kind"] for line in view["lines"]} == {"call_ai", "transcription"}


async def _rows_if(sessions, count, **where):
    rows = await usage_rows(sessions, **where)
    return rows if len(rows) >= count else None


async def test_a_live_call_that_spends_the_budget_pauses_the_campaign_but_talks_on(scene, sessions, realtime):
    seeded = await seed_call(sessions)
    async with sessions() as db, db.begin():
        task = await repo.get_task(db, seeded.user_id, seeded.task_id)
        await repo.add_task(db, seeded.user_id, task.campaign_id, target_name="Next", phone_number="+4930999999")
        campaign = await repo.get_campaign(db, seeded.user_id, task.campaign_id)
        campaign.budget_microusd = 1000   # $0.001: the greeting alone spends it
    runtime = scene()
    realtime.greeting = FakeResponse(audio=generated_speech(1.0), transcript="Hello!")
    async with audiosocket_server(runtime) as server, asterisk_call(server, seeded.as_uuid) as asterisk:
        model = await realtime.wait_for_connection()
        paused = await eventually(lambda: _campaign_if(sessions, campaign.id, CampaignStatus.PAUSED), 5, 0.05,
                                  what="the campaign paused for its budget")
        assert paused.pause_reason is PauseReason.BUDGET_SPENT and paused.spent_microusd >= 1000
        # The call is not cut: the model keeps talking, and what it uses is still recorded.
        await model.speak(FakeResponse(audio=generated_speech(0.3), transcript="Still here."))
        await eventually(lambda: _rows_if(sessions, 2, call_id=seeded.call_id), 5, 0.05, what="the second usage")
        assert not asterisk.hangup.is_set()
    async with sessions() as db:
        notes = await repo.list_notifications(db, seeded.user_id)
        claimed = await claim_due_tasks(db, claimer="test", limit=10)
    assert [note.kind for note in notes] == [costs.BUDGET_NOTIFICATION]
    assert "budget of $0.00 is spent" in notes[0].message and notes[0].payload["campaign_id"] == campaign.id
    assert claimed == []   # nothing more of the campaign is dialed
    final = await campaign_row(sessions, campaign.id)
    rows = await usage_rows(sessions, campaign_id=campaign.id)
    assert final.spent_microusd == sum(row.cost_microusd for row in rows) > paused.spent_microusd


async def _campaign_if(sessions, campaign_id, status):
    campaign = await campaign_row(sessions, campaign_id)
    return campaign if campaign.status is status else None


async def test_raising_the_budget_lets_the_user_resume_and_dialing_goes_on(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    seeded = await seed_task(sessions)
    async with sessions() as db, db.begin():
        await costs.set_budget(db, seeded.user_id, seeded.campaign_id, 2_000_000)
        scope = costs.Scope(seeded.user_id, seeded.campaign_id, seeded.task_id)
        entry = costs.UsageEntry(UsageKind.ANALYZER, "gpt-4.1-mini", TokenUsage(text_in=1000),
                                 price_usage(runtime.settings.model_prices, "gpt-4.1-mini", TokenUsage(text_in=1000)))
        assert await costs.record_usage(db, scope, dataclasses.replace(
            entry, priced=dataclasses.replace(entry.priced, cost_microusd=1_999_999))) is None
        stop = await costs.record_usage(db, scope, entry)   # 400 µUSD more: over the budget
    assert stop == costs.BudgetStop(seeded.user_id, seeded.campaign_id, 2_000_399, 2_000_000)
    try:
        await control_campaign(runtime, seeded.user_id, seeded.campaign_id, ControlAction.RESUME)
        raise AssertionError("resumed with the budget spent")
    except ControlError as exc:
        assert exc.code == "budget_spent" and "raise the budget first" in exc.message
    async with sessions() as db:
        assert await claim_due_tasks(db, claimer="test", limit=10) == []
    async with sessions() as db, db.begin():
        campaign, stop = await costs.set_budget(db, seeded.user_id, seeded.campaign_id, 5_000_000)
    assert stop is None and campaign.status is CampaignStatus.PAUSED   # raising it does not resume by itself
    await control_campaign(runtime, seeded.user_id, seeded.campaign_id, ControlAction.RESUME)
    async with sessions() as db:
        assert [task.id for task in await claim_due_tasks(db, claimer="test", limit=10)] == [seeded.task_id]
    campaign = await campaign_row(sessions, seeded.campaign_id)
    assert (campaign.status, campaign.pause_reason) == (CampaignStatus.ACTIVE, None)


async def test_a_budget_set_below_what_is_spent_pauses_at_once(sessions):
    seeded = await seed_task(sessions)
    async with sessions() as db, db.begin():
        await db.execute(Campaign.__table__.update().where(Campaign.id == seeded.campaign_id)
                         .values(spent_microusd=3_000_000))
        campaign, stop = await costs.set_budget(db, seeded.user_id, seeded.campaign_id, 1_000_000)
    assert stop is not None and campaign.status is CampaignStatus.PAUSED
    assert campaign.pause_reason is PauseReason.BUDGET_SPENT


async def test_the_trunk_time_of_an_answered_call_is_recorded_once_at_its_end(settings, sessions):
    settings = dataclasses.replace(settings, trunk_price_per_minute=1.2, trunk_billing_increment_seconds=60)
    seeded = await seed_task(sessions)
    async with sessions() as db, db.begin():
        call = Call(user_id=seeded.user_id, task_id=seeded.task_id, attempt_number=1, dialed_number="+15551230001",
                    status=CallStatus.ANSWERED, answered_at=utcnow() - timedelta(seconds=61))
        db.add(call)
        await db.flush()
        call_id = call.id
    for _ in range(2):   # the AMI and the h extension may both report the end: recorded once
        async with sessions() as db, db.begin():
            await finish_call(db, settings, user_id=seeded.user_id, call_id=call_id, outcome=CallOutcome.ANSWERED,
                              dial_status="ANSWER", source="agi.call-end")
    [trunk] = await usage_rows(sessions, call_id=call_id)
    assert trunk.kind is UsageKind.TRUNK and trunk.model == "trunk" and trunk.seconds in (61, 62)
    assert trunk.cost_microusd == 2_400_000   # two started minutes at $1.20
    assert trunk.price == {"name": "TRUNK_PRICE_PER_MINUTE", "prices": {"per_minute": 1.2, "increment_seconds": 60}}
    assert (trunk.task_id, trunk.campaign_id) == (seeded.task_id, seeded.campaign_id)
    assert (await campaign_row(sessions, seeded.campaign_id)).spent_microusd == 2_400_000


async def test_the_analyzers_usage_is_recorded_against_the_call_it_judged(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    call_id = await answered_call(sessions, llm_settings, seeded, [])
    fake_openai.queue_reply(content=verdict("success"))
    analyzer = PostCallAnalyzer(llm_settings, sessions, max_attempts=3, retry_base_seconds=0)
    try:
        assert await analyzer.run_once() == 1
    finally:
        await analyzer.close()
    [row] = await usage_rows(sessions, kind=UsageKind.ANALYZER)
    [(model, sent)] = fake_openai.usage_sent
    assert (row.call_id, row.task_id, row.campaign_id, row.model) == (call_id, seeded.task_id, seeded.campaign_id,
                                                                      model)
    assert row.text_in + row.text_cached_in == sent["prompt_tokens"] and row.text_out == sent["completion_tokens"]
    assert row.cost_microusd == price_usage(llm_settings.model_prices, "gpt-4.1-mini",
                                            chat_token_usage(_namespace(sent))).cost_microusd > 0


async def test_a_failed_analysis_is_paid_for_too(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    await answered_call(sessions, llm_settings, seeded, [])
    fake_openai.queue_reply(content="not json at all")
    analyzer = PostCallAnalyzer(llm_settings, sessions, max_attempts=3, retry_base_seconds=0)
    try:
        await analyzer.run_once()
    finally:
        await analyzer.close()
    [row] = await usage_rows(sessions, kind=UsageKind.ANALYZER)
    assert row.text_out == fake_openai.usage_sent[0][1]["completion_tokens"] > 0


async def test_the_assistants_usage_is_recorded_against_the_user_and_chat(sessions, llm_settings, fake_openai):
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, "carol", "x")
        chat = await repo.create_chat_session(db, user.id)
    fake_openai.queue_reply(content="Which dentist should I call?")
    turn = await UIAssistantService(llm_settings).respond(sessions, user.id, chat.id, "Book me a cleaning")
    assert turn.reply == "Which dentist should I call?"
    [row] = await usage_rows(sessions, kind=UsageKind.ASSISTANT)
    [(model, sent)] = fake_openai.usage_sent
    assert (row.user_id, row.chat_id, row.campaign_id, row.model) == (user.id, chat.id, None, model)
    assert row.text_in + row.text_cached_in == sent["prompt_tokens"] and row.cost_microusd > 0
    async with sessions() as db:
        month = await costs.month_costs(db, user.id, f"{utcnow():%Y-%m}")
    assert month["total_microusd"] == row.cost_microusd
    assert month["campaigns"] == [{"campaign_id": None, "name": "planning chats", "cost_microusd": row.cost_microusd,
                                   "cost": month["total"], "trunk_seconds": 0}]


def _namespace(usage: dict):
    return SimpleNamespace(**{key: SimpleNamespace(**value) if isinstance(value, dict) else value
                              for key, value in usage.items()})


async def test_a_finished_campaigns_summary_cost_does_not_pause_it(sessions):
    seeded = await seed_task(sessions)
    async with sessions() as db, db.begin():
        await put_task(db, seeded.user_id, seeded.task_id, TaskStatus.COMPLETED)
        await costs.set_budget(db, seeded.user_id, seeded.campaign_id, 1)
        stop = await costs.record_usage(db, costs.Scope(seeded.user_id, seeded.campaign_id), costs.UsageEntry(
            UsageKind.SUMMARIZER, "gpt-4.1-mini", TokenUsage(text_in=10),
            price_usage(parse_model_prices(""), "gpt-4.1-mini", TokenUsage(text_in=10_000))))
    assert stop is None and (await campaign_row(sessions, seeded.campaign_id)).status is CampaignStatus.ACTIVE
