"""A call's cost on a real Asterisk 22: the trunk time is the answered time Asterisk gave the call (from the
callee's answer to the hangup), priced by TRUNK_PRICE_PER_MINUTE in its billing increments, and the call AI's
tokens are what the model's session reported in response.done; the campaign's spend is their sum."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import create_engine
from db.models import Campaign, UsageKind, UsageRecord
from tests.asterisk.stack import ANSWERS
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_realtime import FakeResponse

pytestmark = pytest.mark.asterisk


async def test_an_answered_calls_trunk_seconds_and_model_tokens_are_priced_into_the_campaign(make_stack, asterisk):
    stack = await make_stack(TRUNK_PRICE_PER_MINUTE="0.6", TRUNK_BILLING_INCREMENT_SECONDS="6")
    # The AI greets and ends the call (end_call): the bridge plays its answer out, response.done included.
    stack.fake.realtime.script = lambda conn, index: FakeResponse(
        audio=stack.models.speech, transcript="Hello, this is an AI assistant. Goodbye.", chunk_interval=0.1,
        function_call=("end_call", {"outcome": "objective_met", "summary": "greeted"})) if index == 0 else None
    campaign_id, [task_id] = await stack.import_campaign([("Answers", ANSWERS)])
    await stack.wait_task(task_id, "completed", "failed", "retry_scheduled", timeout=60)
    await eventually(lambda: _summarized(stack, campaign_id), 30, 0.2, what="the summary (its usage is the last)")
    (call, _, _), = await stack.call_rows(task_id)
    session = stack.fake.realtime.connections[0]

    engine = create_engine(stack.database_url)
    try:
        async with AsyncSession(engine) as db:
            rows = (await db.scalars(select(UsageRecord).where(UsageRecord.call_id == call.id))).all()
            campaign = await db.get(Campaign, campaign_id)
    finally:
        await engine.dispose()
    [trunk] = [row for row in rows if row.kind is UsageKind.TRUNK]
    answered = math.ceil((call.ended_at - call.answered_at).total_seconds())
    assert trunk.seconds == answered > 0
    assert abs(trunk.seconds - call.duration_seconds) <= 1          # Asterisk's own ANSWEREDTIME agrees
    billed = math.ceil(answered / 6) * 6
    assert trunk.cost_microusd == round(billed / 60 * 0.6 * 1_000_000)

    ai = [row for row in rows if row.kind is UsageKind.CALL_AI]
    reported = [usage for usage in session.usage_sent if "output_token_details" in usage]
    assert len(ai) == len(reported) >= 1
    assert sum(row.audio_out for row in ai) == sum(u["output_token_details"]["audio_tokens"] for u in reported)
    assert all(row.cost_microusd > 0 for row in ai)
    assert campaign.spent_microusd == sum(row.cost_microusd or 0 for row in
                                          await _campaign_rows(stack.database_url, campaign_id))
    costs = (await stack.api("GET", f"/api/calls/{call.id}/costs")).json()
    assert costs["trunk_seconds"] == answered and costs["total_microusd"] == sum(r.cost_microusd for r in rows)


async def _summarized(stack, campaign_id: int):
    summary = (await stack.api("GET", f"/api/campaigns/{campaign_id}/summary")).json()
    return summary if summary.get("summarized_at") else None


async def _campaign_rows(database_url: str, campaign_id: int) -> list[UsageRecord]:
    engine = create_engine(database_url)
    try:
        async with AsyncSession(engine) as db:
            return list((await db.scalars(select(UsageRecord).where(UsageRecord.campaign_id == campaign_id))).all())
    finally:
        await engine.dispose()
